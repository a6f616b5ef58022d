# Two commands do all the set-up on a fresh Debian machine: `make run` and `make test`.
# Both install what is missing first: Debian packages (as root) and the Python venv.

PYTHON  ?= python3
VENV    := .venv
POLICY  ?= examples/policy.yml
STAMP   := $(VENV)/.installed

.PHONY: doctor lint run test vm-test vagrant-test sysdeps venv clean

# tools/doctor.py holds the one list of Debian packages, each with the capability that proves it
# is there (swaks with TLS, not just swaks). `make run` needs the "run" rows, the test targets
# every row; sysdeps installs the packages of the failing checks, doctor names what still fails.
SCOPE := test
run: SCOPE := run

sysdeps:
	@missing="$$($(PYTHON) tools/doctor.py --scope $(SCOPE) --packages)"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:" $$missing "(run as root, or apt-get install them)"; exit 1; fi; \
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

doctor: sysdeps
	@$(PYTHON) tools/doctor.py --scope $(SCOPE)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

venv: $(STAMP)

# The daemon on the example policy: loopback listener, Maildir in var/maildir, mail log on stderr.
# As root it pushes TCPREFUSE into the kernel (table inet netpolicy only); without
# CAP_NET_ADMIN it warns and refuses in userland. Ctrl-C stops it; kernel refusals stay until
# `.venv/bin/netpolicy flush`.
run: doctor venv
	$(VENV)/bin/netpolicy validate -p $(POLICY)
	$(VENV)/bin/netpolicy serve -p $(POLICY) --verbose-connections

test: doctor venv lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

# netpolicy/ under mypy --strict and ruff's pyflakes, syntax, bugbear, async, ruff-specific and
# pylint error/warning rules; tests, benches and tools under pyflakes and syntax.
lint: venv
	$(VENV)/bin/ruff check --select F,E9,B,ASYNC,RUF,PLE,PLW netpolicy
	$(VENV)/bin/ruff check --select F,E9 tests bench tools
	$(VENV)/bin/mypy netpolicy  # strict, from pyproject.toml

# Only the Ansible/Vagrant/VM tests; fails (instead of skipping) when the machine cannot boot the VM.
vm-test: doctor venv
	NETPOLICY_VM_TEST=require $(VENV)/bin/pytest -q -p no:cacheprovider -rs tests/vm

# Only `vagrant up` on the Vagrantfile (libvirt, qemu/TCG, in a namespace); fails instead of skipping.
vagrant-test: doctor venv
	NETPOLICY_VM_TEST=require $(VENV)/bin/pytest -q -p no:cacheprovider -rs tests/vagrant

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis

# Load the Vagrantfile with a stand-in for Vagrant and print its inline shell provisioners as
# JSON ([{machine, name, args, inline}]), so the real-VM test can run the sender's checks.
#   ruby tests/vm/vagrant_scripts.rb Vagrantfile
require "json"

class Recorder
  def initialize(scripts, machine = nil)
    @scripts = scripts
    @machine = machine
  end

  def define(name, **_opts)
    yield Recorder.new(@scripts, name) if block_given?
    self
  end

  def provision(_type = nil, **opts)
    if opts[:inline]
      @scripts << { machine: @machine, name: opts[:name], args: Array(opts[:args]).map(&:to_s), inline: opts[:inline] }
    end
    yield Recorder.new(@scripts, @machine) if block_given?
    self
  end

  def method_missing(_name, *_args, **_opts)
    yield Recorder.new(@scripts, @machine) if block_given?
    self
  end

  def respond_to_missing?(*_args)
    true
  end
end

module Vagrant
  SCRIPTS = []
  def self.configure(_version)
    yield Recorder.new(SCRIPTS)
  end
end

load ARGV.fetch(0)
puts JSON.generate(Vagrant::SCRIPTS)

"""Test your actors and workflows the way Loom tests itself: on a virtual clock (timers
elapse at once), with stub or real activities, under crashes, storage errors, paused
processes, clock steps and contending runtimes, with the promises checked afterwards."""

from runtime.testing.effects import Receiver, StubActivities
from runtime.testing.faults import Faults, FaultyJournal
from runtime.testing.loop import VirtualTimeLoop, run_virtual
from runtime.testing.simulation import Report, Simulation

__all__ = ["Faults", "FaultyJournal", "Receiver", "Report", "Simulation", "StubActivities",
           "VirtualTimeLoop", "run_virtual"]

"""Durable virtual actors: ordinary async Python, every step journaled, replayed after a crash."""

from runtime.actors.actor import Actor, ActorRef, handler, invariant
from runtime.actors.context import ActorContext, Saga
from runtime.actors.resilience import Breakers, RetryPlan
from runtime.actors.runtime import ActorRuntime, Hooks

__all__ = ["Actor", "ActorContext", "ActorRef", "ActorRuntime", "Breakers", "Hooks",
           "RetryPlan", "Saga", "handler", "invariant"]

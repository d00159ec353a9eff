"""Closed-loop evaluation: checkpoint → Policy → rollouts in simulation, reports, and a policy server."""

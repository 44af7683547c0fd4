"""Tests of the Kantata OX simulator (syncd.simulator)."""

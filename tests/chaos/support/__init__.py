"""Helpers of the chaos suite: the receiver, the processes, the counting."""

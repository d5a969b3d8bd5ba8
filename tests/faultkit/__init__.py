"""The fault suite's harness (issue 9 part 5, RELIABILITY §7): start cropcron under a steady load
of ledger-writing jobs, kill or stall one component, heal it, and compare what was due, what
history recorded and what the jobs did. Used by tests/test_fault_suite.py and bench/faults.py;
docs/reliability.md explains the table it makes."""

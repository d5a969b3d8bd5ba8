"""Test job: appends start/end lines to a ledger file, sleeps, exits with a given code.

    ledger.py LEDGER RUN_ID ATTEMPT SLEEP_SECONDS EXIT_CODE [--child PIDFILE]

With --child it first starts a child process (sleep) and writes its pid, so a test can check
that a timeout killed the whole process group.
"""

import os
import subprocess
import sys
import time

ledger, run_id, attempt, sleep_s, code = sys.argv[1:6]
if "--child" in sys.argv:
    pidfile = sys.argv[sys.argv.index("--child") + 1]
    child = subprocess.Popen(["sleep", "300"])
    with open(pidfile, "w") as f:
        f.write(str(child.pid))
with open(ledger, "a") as f:
    f.write(f"start {run_id} {attempt} {time.time():.6f} {os.getpid()}\n")
print(f"job output line for {run_id} attempt {attempt}", flush=True)
time.sleep(float(sleep_s))
print("last words before exit", flush=True)
with open(ledger, "a") as f:
    f.write(f"end {run_id} {attempt} {time.time():.6f} {os.getpid()}\n")
sys.exit(int(code))

#!/bin/sh
# The fault suite's job (tests/faultkit): a start line, a pause so that faults land mid-job, then
# its one effect, the end line, appended to a ledger with the time since boot (/proc/uptime, read
# by a shell builtin: no process to start for it):
#
#     effect.sh LEDGER RUN_ID KEY ATTEMPT SECONDS        (KEY: the instant, or the file's name)
#
# A shell script run as an argv (cropcron never runs a shell itself): a Python start costs about
# 80 ms of CPU on the 2-core test machine, and 20 of them a second would take it all.
read -r up _ < /proc/uptime
printf 'start %s %s %s %s %s\n' "$2" "$3" "$4" "$$" "$up" >> "$1"
sleep "$5"
read -r up _ < /proc/uptime
printf 'end %s %s %s %s %s\n' "$2" "$3" "$4" "$$" "$up" >> "$1"

#!/bin/sh
# The fault suite's job (tests/faultkit): a start line, a pause so that faults land mid-job, then
# its one effect, the end line, appended to a ledger with the time:
#
#     effect.sh LEDGER RUN_ID KEY ATTEMPT SECONDS        (KEY: the instant, or the file's name)
#
# A shell script run as an argv (cropcron never runs a shell itself): a Python start costs about
# 80 ms of CPU on the 2-core test machine, and 20 of them a second would take it all.
printf 'start %s %s %s %s %s\n' "$2" "$3" "$4" "$$" "$(date +%s.%N)" >> "$1"
sleep "$5"
printf 'end %s %s %s %s %s\n' "$2" "$3" "$4" "$$" "$(date +%s.%N)" >> "$1"

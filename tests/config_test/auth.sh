#!/bin/sh
# Stand-in external auth program for the config tests (never run by them):
# answers 0 ("no") to every request of the generic protocol.
while read -r _; do echo 0; done

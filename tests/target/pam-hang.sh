#!/bin/sh
# pam_exec hook for sudo: while /etc/tt/hang-become exists, authentication never answers
# (like an LDAP/SSSD backend that hangs). Without the marker it is a no-op.
if [ -e /etc/tt/hang-become ]; then
    exec sleep infinity
fi
exit 0

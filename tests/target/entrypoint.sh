#!/bin/sh
# Start-up of the test target: fresh host keys per container, the run's public key from
# $AUTHORIZED_KEY (never baked), the become password from $BECOME_PASSWORD, then sshd in the
# foreground (tini is PID 1 and reaps).
set -eu
ssh-keygen -A >/dev/null
if [ -z "${AUTHORIZED_KEY:-}" ]; then
    echo "tt-entrypoint: AUTHORIZED_KEY is empty" >&2
    exit 64
fi
install -d -m 0700 -o ansible -g ansible /home/ansible/.ssh
printf '%s\n' "$AUTHORIZED_KEY" > /home/ansible/.ssh/authorized_keys
chown ansible:ansible /home/ansible/.ssh/authorized_keys
chmod 0600 /home/ansible/.ssh/authorized_keys
echo "ansible:${BECOME_PASSWORD:-become-secret}" | chpasswd
exec /usr/sbin/sshd -D -e

#!/bin/sh
# Starts one gateway replica of docker-compose.yml: fills the ${NAME}
# placeholders of the mounted gateway.yaml from the environment, then serves
# the result. An unset variable stops the start with its name, rather than
# leaving "${NAME}" in a URL for the gateway to reject less clearly.
# The filled copy holds the database password, so it goes to the container's
# private /tmp (a tmpfs), never back to the mounted file.
set -eu

TEMPLATE=/etc/gateway/gateway.yaml
RENDERED=/tmp/gateway.yaml

python - "$TEMPLATE" "$RENDERED" <<'PY'
import os
import re
import sys

source, target = sys.argv[1], sys.argv[2]
text = open(source, encoding="utf-8").read()
names = sorted(set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)))
missing = [name for name in names if name not in os.environ]
if missing:
    sys.exit(f"{source}: set {', '.join(missing)} in the environment")
text = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: os.environ[m.group(1)], text)
fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w", encoding="utf-8") as out:
    out.write(text)
PY

exec gateway serve --config "$RENDERED" --workers "${GATEWAY_WORKERS:-2}" "$@"

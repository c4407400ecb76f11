#!/bin/sh
# Run once by the postgres image when it initialises an empty data directory
# (docker-entrypoint-initdb.d): lets a streaming standby on the compose network
# (the `replica` service of the `scale` profile) take a base backup and stream
# WAL as POSTGRES_USER, with a password. The image's own pg_hba.conf allows
# replication connections from localhost only. For a data directory created
# before this file existed, add the same line to pg_hba.conf and reload.
set -eu
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"

#!/bin/sh
# Back up the advbias database while the study runs: pg_dump (PostgreSQL) or SQLite's online
# .backup (a consistent copy even while the server writes). Keeps the newest $KEEP copies.
#   ADVBIAS_DATABASE_URL  the database (as in advbias.env)
#   BACKUP_DIR            where the copies go (default /var/backups/advbias)
#   KEEP                  how many copies to keep (default 48)
set -eu
: "${ADVBIAS_DATABASE_URL:?set ADVBIAS_DATABASE_URL}"
BACKUP_DIR=${BACKUP_DIR:-/var/backups/advbias}
KEEP=${KEEP:-48}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
umask 077
mkdir -p "$BACKUP_DIR"

case "$ADVBIAS_DATABASE_URL" in
  postgres://*|postgresql://*|postgresql+psycopg://*)
    url=$(printf '%s' "$ADVBIAS_DATABASE_URL" | sed 's/^postgresql+psycopg:/postgresql:/')
    out="$BACKUP_DIR/advbias-$stamp.pgdump"
    pg_dump --format=custom --no-owner --dbname="$url" --file="$out.partial"
    ;;
  sqlite:///*)
    db=${ADVBIAS_DATABASE_URL#sqlite:///}
    out="$BACKUP_DIR/advbias-$stamp.sqlite"
    sqlite3 "$db" ".timeout 30000" ".backup '$out.partial'"
    sqlite3 "$out.partial" "PRAGMA integrity_check;" | grep -qx ok
    ;;
  *)
    echo "backup.sh: unsupported database URL" >&2
    exit 2
    ;;
esac
mv "$out.partial" "$out"
echo "backup written: $out"
# keep the newest $KEEP copies
ls -1t "$BACKUP_DIR"/advbias-* 2>/dev/null | tail -n +"$((KEEP + 1))" | while read -r old; do rm -f -- "$old"; done

#!/usr/bin/env bash
# Installs the Debian packages whose gettext catalogs (/usr/share/locale/*/LC_MESSAGES/*.mo) make the embedded
# parallel corpus, and the per-language locale data. Skips quietly where apt-get is missing (not Debian).
set -euo pipefail
packages=(coreutils libc-l10n libglib2.0-data libgtk2.0-common iso-codes git apt dpkg gettext postgresql-15
          postgresql-client-15 systemd xkb-data libgdk-pixbuf2.0-common gsettings-desktop-schemas at-spi2-common
          shared-mime-info libpam-runtime gnupg-l10n bash tar sed grep findutils diffutils wget make
          binutils-common man-db packagekit appstream psmisc procps login adduser xz-utils krb5-locales
          libgstreamer1.0-0)
if ! command -v apt-get >/dev/null; then
  echo "install_catalogs: no apt-get here; the corpus uses whatever catalogs this machine has" >&2
  exit 0
fi
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

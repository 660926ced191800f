#!/usr/bin/env bash
# Installs the system packages edgefleet's demo and tests use, when missing and when we can.
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
# the RTSP camera tests publish their stream with ffmpeg; CI runs this script first, as root
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "system-packages: missing ${need[*]}; run as root or install them (apt-get install ${need[*]})." >&2
  echo "system-packages: the demo falls back to an in-process broker without mosquitto;" >&2
  echo "system-packages: the RTSP camera tests fail without ffmpeg." >&2
  exit 0
fi
echo "system-packages: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# the package's own service is not needed: tests and the demo start their own broker
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now mosquitto >/dev/null 2>&1 || true; fi

#!/usr/bin/env bash
# Installs the system packages edgefleet's demo and tests use, when missing and when we can.
set -euo pipefail
# RabbitMQ, where installed, gets its MQTT plugin on port 1884 (mosquitto keeps 1883): the
# controller and agents are tested against it as a second, natively clustering broker.
mqtt_port_open() {
  (exec 3<>/dev/tcp/127.0.0.1/1884) 2>/dev/null
}
enable_rabbitmq_mqtt() {
  command -v rabbitmq-plugins >/dev/null 2>&1 || return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "system-packages: run as root to enable RabbitMQ's MQTT plugin on port 1884" >&2
    return 0
  fi
  local conf=/etc/rabbitmq/rabbitmq.conf
  mkdir -p /etc/rabbitmq
  touch "$conf"
  if ! grep -q '^mqtt.listeners.tcp' "$conf"; then
    printf 'mqtt.listeners.tcp.default = 127.0.0.1:1884\n' >>"$conf"
  fi
  if ! grep -qs 'rabbitmq_mqtt' /etc/rabbitmq/enabled_plugins; then
    if ! rabbitmq-plugins enable --offline rabbitmq_mqtt >/dev/null; then
      echo "system-packages: could not enable RabbitMQ's MQTT plugin" >&2
      return 0
    fi
  fi
  # what counts is a listener, not the files: a node booted before they were written (or
  # restarted by a service manager that failed) has no MQTT port until it boots again
  mqtt_port_open && return 0
  # the listener's port is read when the node boots. `rabbitmqctl stop` rather than the init
  # script's restart, which waits forever for a pid file that a node started otherwise never wrote
  if timeout 30 rabbitmqctl -q status >/dev/null 2>&1; then
    timeout 60 rabbitmqctl -q stop >/dev/null 2>&1 || true
  fi
  timeout 120 rabbitmq-server -detached >/dev/null 2>&1 ||
    timeout 120 service rabbitmq-server start >/dev/null 2>&1 || true
  local waited=0
  until mqtt_port_open; do
    if [ "$waited" -ge 120 ]; then
      echo "system-packages: RabbitMQ's MQTT listener did not open on 127.0.0.1:1884 in 120 s" >&2
      return 0
    fi
    sleep 1
    waited=$((waited + 1))
  done
  echo "system-packages: RabbitMQ MQTT plugin listening on 127.0.0.1:1884"
}
enable_rabbitmq_mqtt

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
# the RTSP camera tests publish their stream with ffmpeg; CI runs this script first, as root
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
# the dashboard's browser tests drive Debian's chromium through Playwright (never a downloaded one)
[ -x /usr/bin/chromium ] || need+=(chromium)
# tests/systemd rate and verify the units with systemd-analyze (nothing is started)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "system-packages: missing ${need[*]}; run as root or install them (apt-get install ${need[*]})." >&2
  echo "system-packages: the demo falls back to an in-process broker without mosquitto;" >&2
  echo "system-packages: the RTSP camera tests fail without ffmpeg, the dashboard tests without chromium." >&2
  exit 0
fi
echo "system-packages: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# the package's own service is not needed: tests and the demo start their own broker
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now mosquitto >/dev/null 2>&1 || true; fi

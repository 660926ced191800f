#!/usr/bin/env bash
# Installs the system packages edgefleet's demo and tests use, when missing and when we can.
set -euo pipefail
# RabbitMQ, where installed, gets its MQTT plugin on port 1884 (mosquitto keeps 1883): the
# controller and agents are tested against it as a second, natively clustering broker.
enable_rabbitmq_mqtt() {
  command -v rabbitmq-plugins >/dev/null 2>&1 || return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "system-packages: run as root to enable RabbitMQ's MQTT plugin on port 1884" >&2
    return 0
  fi
  local conf=/etc/rabbitmq/rabbitmq.conf changed=0
  mkdir -p /etc/rabbitmq
  touch "$conf"
  if ! grep -q '^mqtt.listeners.tcp' "$conf"; then
    printf 'mqtt.listeners.tcp.default = 127.0.0.1:1884\n' >>"$conf"
    changed=1
  fi
  if ! grep -qs 'rabbitmq_mqtt' /etc/rabbitmq/enabled_plugins; then
    if ! rabbitmq-plugins enable --offline rabbitmq_mqtt >/dev/null; then
      echo "system-packages: could not enable RabbitMQ's MQTT plugin" >&2
      return 0
    fi
    changed=1
  fi
  if [ "$changed" -eq 1 ]; then
    # the listener's port is read when the node boots: restart it if it runs
    # (`rabbitmqctl stop` without a pid file: the init script's restart waits forever for a
    # pid file that a node started otherwise never wrote)
    if timeout 30 rabbitmqctl -q status >/dev/null 2>&1; then
      timeout 60 rabbitmqctl -q stop >/dev/null 2>&1 || true
      timeout 120 service rabbitmq-server start >/dev/null 2>&1 ||
        timeout 120 systemctl start rabbitmq-server >/dev/null 2>&1 || true
    fi
    echo "system-packages: RabbitMQ MQTT plugin enabled on 127.0.0.1:1884"
  fi
}
enable_rabbitmq_mqtt

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

#!/usr/bin/env bash
# Start the ToolActor on embedded defaults and print a curl line that works against it.
set -euo pipefail
HOST="${TOOLSIM_HOST:-127.0.0.1}"
PORT="${TOOLSIM_PORT:-8001}"
cat <<MSG

ToolActor starting on http://$HOST:$PORT (embedded SmolLM2, loaded at start-up: a few seconds). Try:

curl -s http://$HOST:$PORT/v1/tool_calls -H 'content-type: application/json' -d '{"tools":[{"type":"function","function":{"name":"get_weather","description":"Current weather in a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],"output_schemas":{"get_weather":{"type":"object","properties":{"city":{"type":"string"},"temperature_c":{"type":"number"},"conditions":{"type":"string","enum":["sunny","cloudy","rain","snow","fog"]}},"required":["city","temperature_c","conditions"],"additionalProperties":false}},"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}}]}'

MSG
exec .venv/bin/toolsim serve toolactor --host "$HOST" --port "$PORT"

"""Inference: a trained policy (checkpoint or exported folder -> actions), observation validation, history and
chunk execution (replan, ensemble, rtc), and the websocket server, (asynchronous) client and wire protocol.
Imports neither Lightning nor the simulators."""

"""Inference: a trained policy (checkpoint or exported folder -> actions), observation validation, history and
chunk queue, and the websocket server, client and wire protocol. Imports neither Lightning nor the simulators."""

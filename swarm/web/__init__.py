"""The node's HTTP surface: health, metrics, peers, the OpenAI-compatible API, the live dashboard (with its
static files) and the guard in front of them. It turns HTTP into gateway calls; it knows nothing about how a
request is routed or generated."""

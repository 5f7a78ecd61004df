"""Where a generation request goes and how it is carried: routing across serving peers, dispatch with
failover, the server side of the generate protocol and the bridge to this node's engine. It knows peers'
announces and the generate protocol; it knows nothing about HTTP or the command line."""

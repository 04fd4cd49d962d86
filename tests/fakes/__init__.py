"""Hand-written fakes of every external party, speaking the wire formats of protocols.md on real sockets."""

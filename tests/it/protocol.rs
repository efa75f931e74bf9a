//! Protocol-level behaviour: HTTP/2 clients, TLS upstreams, header handling, poison payloads.

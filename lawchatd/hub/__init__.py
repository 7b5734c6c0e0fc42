"""Hub access: the HTTP session for a firm's network (session: proxy, CA, failures in words)
and the Hub client (client: a resolve parsed once into `Resolved`, ranged GETs, the token
only for the Hub's own origin)."""

"""The daemon's download service on top of the engine (lawchatd.fetch).

catalog: the variants and their files; download: one variant fetched by the engine (ModelSpec
-> FileRef, Settings -> FetchOptions); journal: the row and its parts in the store, written
only there, status changes through `transition`; manager: one running download as a task,
the queue behind it (queue), final files and their checks (finals), the bandwidth cap
(bandwidth)."""

"""Test and benchmark machinery shared by tests/ and bench/: never imported by the daemon.

- `daemon`: `lawchatd serve` as a child process on a free port (the one launcher).
- `ports`: a free loopback port, and waiting for a child to listen on one.
- `servers`: an aiohttp app on loopback for the length of a test.
- `models`: the test repo's model files and the catalog that names them.
- `mirror_server`, `mirror_faults`: the in-process mirror with fault injection.
- `flaky_hub`: an independent Hub + CDN with seeded faults; `netproxy`: a firm's proxy.
- `ggufgen`, `lawchat_gguf`: loadable GGUF files, tiny or shaped like law-chat.

It ships in the wheel (as aiohttp ships `aiohttp.test_utils`) so that `bench/` scripts import it
from an installed lawchatd instead of editing `sys.path`.
"""

"""Developer tooling: the embedded broker and Redis, service processes, the
simulated shop and metric scraping. Used by the command line, benchmarks and
tests; imports only the kernel (`streamrec`), never a service."""

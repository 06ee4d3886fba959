"""Pure allocator policy: no gRPC, HTTP, SQL or I/O. Driven by explicit clocks and random
sources so a simulator can replay traces and tests can pin every decision."""

"""The synthesizer service: text to audio in a registered voice, unary and streamed, and
batch jobs ("briefs") rendered to stored audio files.

It asks the allocator (over gRPC, never through its tables) for a ready voice and a
lease, synthesizes with the engine of the voice's provider, and releases the lease.
"""

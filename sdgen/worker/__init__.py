"""Workers: claim a ticket, generate its images, mark it done; the engine stays warm."""

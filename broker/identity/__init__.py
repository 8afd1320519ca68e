"""Who is calling: principals from the kernel (peer credentials) or a client certificate."""

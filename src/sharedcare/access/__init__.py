"""Access: who is asking (principals, scopes), may they (``policy``), and the holder's choices."""

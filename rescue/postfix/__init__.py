"""Read Postfix's own files (queue files, defer logs) without Postfix running."""

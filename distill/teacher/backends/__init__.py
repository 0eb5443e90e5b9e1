"""Teacher backends: each turns prompts into generations; the generate stage owns storage and resume."""

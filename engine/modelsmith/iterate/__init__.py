"""The iterate loop: phases, ``.iterate/<specialist>/state.json``, resume, self-healing."""

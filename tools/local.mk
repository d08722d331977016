# tools: the lacuna CLI.

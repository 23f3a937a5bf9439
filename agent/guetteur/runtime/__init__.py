"""The running agent: builds every part from the config, wires the data flow, supervises it."""

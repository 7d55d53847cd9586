"""Results you can read, from session directories read back through filtergraft.session: the papers'
numbers and the matching of runs to them (paper), tables (tables), figures (plots), and what the launch
scripts ask of their sessions (launcher). Nothing here imports the trainer or the grafting ring."""

"""One module per pipeline stage; stages talk to each other only through the state store."""

return { up = "x" }

"""graphc: declare a network as a static graph, differentiate it symbolically, compile it to native code."""

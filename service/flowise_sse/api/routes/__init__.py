"""One router per route family, in the order a client meets them."""

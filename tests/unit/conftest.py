from hypothesis import settings

# On a shared machine or in CI an example's time says nothing about its correctness: no deadline.
settings.register_profile("flowise-sse", deadline=None)
settings.load_profile("flowise-sse")

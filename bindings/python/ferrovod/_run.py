"""placeholder"""
def run(*a, **k):  # replaced by the real implementation
    raise NotImplementedError

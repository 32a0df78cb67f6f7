import os
os.environ.setdefault('MPLBACKEND', 'Agg')
os.environ.setdefault('SELF_SUP_PROGRESS', '0')

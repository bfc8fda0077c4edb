// Stand-in for the CUDA header: see cuda_emu.h.
#include "cuda_emu.h"

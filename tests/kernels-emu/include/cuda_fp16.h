// Host emulation: the 16-bit types live in cuda_emu.h (force-included).
#pragma once
#include "cuda_emu.h"

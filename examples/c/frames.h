/* The ids of the frames examples (producer.c, consumer.c, frames.py): the name padded with
 * zeros to 16 bytes, then the frame's index as a big-endian u32; the count of frames is
 * the object of index COUNT_INDEX, a u32 (little-endian). Frame i holds `values` float32
 * values, value j being i + j / 2 (exact in float32 for the sizes used here). */
#ifndef FRAMES_H
#define FRAMES_H

#include <stdint.h>
#include <string.h>

#include "plasma_coord.h"

#define FRAMES_NAME "frames"
#define COUNT_INDEX UINT32_C(0xffffffff)

static inline void frame_id(uint32_t index, uint8_t id[PC_ID_SIZE]) {
    memset(id, 0, PC_ID_SIZE);
    memcpy(id, FRAMES_NAME, strlen(FRAMES_NAME));
    for (int i = 0; i < 4; i++)
        id[16 + i] = (uint8_t)(index >> (24 - 8 * i));
}

static inline float frame_value(uint32_t index, uint64_t j) { return (float)index + (float)j / 2; }

#endif
